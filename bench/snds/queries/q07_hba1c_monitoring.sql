-- Q7. HbA1c tests (NABM 1577) per diabetic patient (ALD cohort of Q5) in the year:
-- the distribution of the number of tests (6 = six or more).
WITH ald AS (
  SELECT DISTINCT ben.BEN_IDT_ANO, ben.BEN_NIR_PSA, ben.BEN_RNG_GEM
  FROM IR_IMB_R i
  JOIN IR_BEN_R ben ON ben.BEN_NIR_PSA = i.BEN_NIR_PSA AND ben.BEN_RNG_GEM = i.BEN_RNG_GEM
  WHERE i.IMB_ETM_NAT IN (41, 43, 45)
    AND (i.MED_MTF_COD LIKE 'E10%' OR i.MED_MTF_COD LIKE 'E11%' OR i.MED_MTF_COD LIKE 'E14%')
    AND i.IMB_ALD_DTD <= DATE '{year}-12-31'),
tests AS (
  SELECT p.BEN_NIR_PSA, p.BEN_RNG_GEM, SUM(b.BIO_ACT_QSN) AS n
  FROM ER_PRS_F p
  JOIN ER_BIO_F b ON b.FLX_DIS_DTD = p.FLX_DIS_DTD AND b.FLX_TRT_DTD = p.FLX_TRT_DTD AND b.FLX_EMT_TYP = p.FLX_EMT_TYP
      AND b.FLX_EMT_NUM = p.FLX_EMT_NUM AND b.FLX_EMT_ORD = p.FLX_EMT_ORD AND b.ORG_CLE_NUM = p.ORG_CLE_NUM
      AND b.DCT_ORD_NUM = p.DCT_ORD_NUM AND b.PRS_ORD_NUM = p.PRS_ORD_NUM AND b.REM_TYP_AFF = p.REM_TYP_AFF
  WHERE p.FLX_DIS_DTD BETWEEN DATE '{year}-01-01' AND DATE '{next}-06-01'
    AND p.EXE_SOI_DTD BETWEEN DATE '{year}-01-01' AND DATE '{year}-12-31'
    AND p.DPN_QLF <> 71 AND b.BIO_PRS_IDE = 1577
  GROUP BY 1, 2),
per_patient AS (
  SELECT ald.BEN_IDT_ANO, COALESCE(SUM(t.n), 0) AS n_hba1c
  FROM ald LEFT JOIN tests t ON t.BEN_NIR_PSA = ald.BEN_NIR_PSA AND t.BEN_RNG_GEM = ald.BEN_RNG_GEM
  GROUP BY 1)
SELECT LEAST(n_hba1c, 6) AS n_tests, COUNT(*) AS n_patients
FROM per_patient
GROUP BY 1
